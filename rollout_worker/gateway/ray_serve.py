"""The gateway as a Ray Serve deployment: the same FastAPI app (`create_app`), one per replica.

Each replica builds the app from the config when it starts (`serve.ingress` late-bound through
`__serve_build_asgi_app__`), reads the task source itself (a path every node sees: a shared
filesystem, or the image's own folder) and balances over every backend on its own counts, so
replicas share nothing and Serve may add or drop them freely. Ray Serve's proxy spreads the
HTTP requests over the replicas.

    art-serve --ray --replicas 2 --tasks /shared/runs --backend http://10.0.0.1:8000 \
        --backend http://10.0.0.2:8000            # or, from a Serve config / `serve run`:
    serve run rollout_worker.gateway.ray_serve:app_builder tasks=/shared/runs \
        backends=http://10.0.0.1:8000,http://10.0.0.2:8000
"""

from __future__ import annotations

from ray import serve

from rollout_worker.gateway.app import GatewayConfig, create_app
from rollout_worker.gateway.options import parse_image_size
from shared.errors import UserError


@serve.ingress()
class ArtServe:
    """A Serve replica of art-serve."""

    def __init__(self, config: GatewayConfig):
        self.config = config

    def __serve_build_asgi_app__(self):
        return create_app(self.config)

    def __repr__(self) -> str:  # the dashboard's Repr column
        return f"ArtServe(tasks={self.config.tasks}, backends={len(self.config.backends)})"


def deployment(config: GatewayConfig, replicas: int = 1, max_ongoing_requests: int = 256):
    """The bound application: `replicas` copies (Serve spreads them over the nodes), a tenth
    of a CPU each in Ray's accounting (the work is I/O: the engines do the compute)."""
    return (
        serve.deployment(ArtServe)
        .options(
            name="art-serve",
            num_replicas=replicas,
            max_ongoing_requests=max_ongoing_requests,
            ray_actor_options={"num_cpus": 0.1},
        )
        .bind(config)
    )


def app_builder(args: dict[str, str]):
    """For `serve run rollout_worker.gateway.ray_serve:app_builder key=value ...` and Serve
    config files: tasks, backends (comma separated), and optionally model, image_size (N or
    HxW), png_name, replicas, api_keys_file (the keys file: keys stay out of the Serve
    config), max_body_mb."""
    config = GatewayConfig(
        tasks=args["tasks"],
        backends=tuple(u for u in args["backends"].split(",") if u),
        model=args.get("model"),
        image_size=parse_image_size(args["image_size"]) if args.get("image_size") else None,
        png_name=args.get("png_name", "art.png"),
        api_keys_file=args.get("api_keys_file"),
        max_body_bytes=int(float(args.get("max_body_mb", 16)) * 2**20),
    )
    return deployment(config, int(args.get("replicas", 1)))


def run(
    config: GatewayConfig,
    replicas: int,
    host: str,
    port: int,
    address: str = "auto",
    proxy_location: str = "EveryNode",
) -> str:
    """Deploy on the running cluster at `address` and return the gateway's URL; the
    application keeps running after this process exits (`serve shutdown` stops it)."""
    # start-up time: a heavy library, loaded when this runs
    import ray

    try:
        ray.init(address=address, log_to_driver=False)
    except ConnectionError as e:
        raise UserError(
            f"no Ray cluster at {address} ({e}): start one (`ray start --head`, make "
            "ray-up-local) or give --ray-address host:port of its GCS"
        ) from e
    serve.start(proxy_location=proxy_location, http_options={"host": host, "port": port})
    serve.run(deployment(config, replicas), name="art-serve", route_prefix="/")
    return f"http://{host}:{port}"
