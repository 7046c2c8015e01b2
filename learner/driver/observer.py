"""The tracking store is an observer: MLflow never stops a run nor stalls a step.

Every metric a run logs is first appended to `<run>/metrics.jsonl` (one JSON object per line,
`{"step": n, "time": unix seconds, "<metric>": value, ...}`, each line written whole or not at
all): the run's own record, whatever the store does. MLflow gets everything (the experiment and
run, the parameters, metrics, artifacts, the end status) from one background thread, in order:

- a call that fails because the store is busy, slow or unreachable (SQLite's `database is
  locked` after its 20 s wait, a server that does not answer) is retried with backoff (1 s
  doubling to 30 s) while the run goes on; what fails for good (a file gone) is dropped and
  logged;
- a step never waits for it: `log_metrics` appends the line and queues the values;
- at the end the driver waits up to `logging.tracking_wait_s` for the queue to drain; what did
  not reach MLflow stays in `metrics.jsonl`, and `summary.json` says how much under `tracking`.

A resumed run continues its MLflow run (its id is in the checkpoint) and drops the lines of
steps after the checkpoint from `metrics.jsonl` (those steps run again).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from shared.atomic import append_line_atomic, read_lines, write_text_atomic

logger = logging.getLogger("art.tracking")
METRICS_FILE = "metrics.jsonl"
FOLDER_TAG = "art.run_folder"  # the run folder of an MLflow run (a resume finds it by this)
MAX_BACKOFF_S = 30.0


@dataclass
class Op:
    """One thing for MLflow, in the order the run produced it."""

    kind: str  # start, metrics, artifact, artifacts, end
    args: dict = field(default_factory=dict)
    values: int = 0  # metric values it carries


class DroppedError(Exception):
    """A call that cannot succeed by retrying (its file is gone, the store refused it)."""


def tracking_uri(uri: str, root: Path) -> str:
    """A bare path is a local SQLite file (relative to the project root)."""
    return uri if "://" in uri else "sqlite:///" + str(root.joinpath(uri).resolve())


def project_root() -> Path:
    # start-up time: a heavy library, loaded when this runs
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        # start-up time: a heavy library, loaded when this runs
        from hydra.utils import get_original_cwd

        return Path(get_original_cwd())
    return Path(".")


def jsonable(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


_PARENTS: list[Tracker] = []


@contextmanager
def parent_run(tracker: Tracker):
    """Runs started inside (art-compare's trainings and evaluation) are its MLflow children."""
    _PARENTS.append(tracker)
    try:
        yield tracker
    finally:
        _PARENTS.remove(tracker)


class Tracker:
    """A run's metrics file and its MLflow run, fed by a background thread (module docstring).
    Quacks like the `mlflow` module where the driver used it: `log_metrics`, `log_artifact`,
    `log_artifacts`, `end_run`."""

    def __init__(
        self,
        cfg,
        run_dir: Path,
        run_name: str,
        run_id: str | None = None,
        resume_step: int | None = None,
        params: dict | None = None,
    ):
        self.uri = tracking_uri(cfg.logging.tracking_uri, project_root())
        artifacts = cfg.logging.artifact_location
        if artifacts and "://" not in artifacts:
            artifacts = project_root().joinpath(artifacts).resolve().as_uri()
        self.experiment, self.artifact_location = cfg.logging.experiment, artifacts or None
        self.wait_s = float(cfg.logging.tracking_wait_s)
        self.file = Path(run_dir) / METRICS_FILE
        self.run_name, self.run_id = run_name, None
        self.parent = _PARENTS[-1] if _PARENTS else None
        self.ops: deque[Op] = deque()
        self.cond = threading.Condition()
        self.sent_values = self.unsent_values = self.dropped = 0
        self.failures, self.last_error = 0, None
        self.closing_by: float | None = None  # give up retrying after this time
        self.ended = False
        if resume_step is not None:
            self._keep_lines_up_to(resume_step)
        resuming = bool(resume_step)  # the run's MLflow run goes on (found by id, or folder)
        self._put(Op("start", {"run_id": run_id, "params": params or {}, "resuming": resuming}))
        self.thread = threading.Thread(target=self._work, name="art-mlflow", daemon=True)
        self.thread.start()

    # -- the driver's side ------------------------------------------------------------------

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Append to metrics.jsonl (a failed write raises: the run folder is the record), then
        queue for MLflow. Never waits for the store."""
        now = time.time()
        values = {k: float(v) for k, v in metrics.items()}
        record = {"step": step, "time": round(now, 3)}
        record.update({k: jsonable(v) for k, v in values.items()})
        append_line_atomic(self.file, json.dumps(record))
        op = Op("metrics", {"metrics": values, "step": step or 0, "ms": int(now * 1000)})
        op.values = len(values)
        self._put(op)

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None:
        self._put(Op("artifact", {"path": str(path), "artifact_path": artifact_path}))

    def log_artifacts(self, path: str, artifact_path: str | None = None) -> None:
        self._put(Op("artifacts", {"path": str(path), "artifact_path": artifact_path}))

    def flush(self, wait_s: float | None = None) -> dict:
        """Wait up to `wait_s` (default logging.tracking_wait_s) for the queue to drain; the
        report of what reached MLflow."""
        deadline = time.monotonic() + (self.wait_s if wait_s is None else wait_s)
        with self.cond:
            while self.ops and time.monotonic() < deadline and self.thread.is_alive():
                self.cond.wait(timeout=min(0.5, max(deadline - time.monotonic(), 0.01)))
        return self.report()

    def end_run(self, status: str = "FINISHED", wait_s: float | None = None) -> dict:
        """Queue the run's end, wait (bounded) for everything, then stop retrying: what is
        left is counted as not sent (it is in metrics.jsonl)."""
        if self.ended:
            return self.report()
        self.ended = True
        self._put(Op("end", {"status": status}))
        report = self.flush(wait_s)
        with self.cond:
            self.closing_by = time.monotonic()  # the thread stops retrying
            self.cond.notify_all()
        if report["unsent_values"] or report["unsent_calls"]:
            logger.warning(
                "MLflow (%s) did not take %d metric values and %d other calls within %gs (%s); "
                "the metrics are in %s",
                self.uri,
                report["unsent_values"],
                report["unsent_calls"],
                self.wait_s if wait_s is None else wait_s,
                self.last_error or "still busy",
                self.file,
            )
        return report

    def report(self) -> dict:
        """What reached MLflow: for the run's summary."""
        with self.cond:
            pending = list(self.ops)
        unsent = sum(op.values for op in pending) + self.unsent_values
        return {
            "store": self.uri,
            "mlflow_run_id": self.run_id,
            "sent_values": self.sent_values,
            "unsent_values": unsent,
            "unsent_calls": sum(1 for op in pending if op.kind != "metrics") + self.dropped,
            "retries": self.failures,
            "last_error": self.last_error,
            "metrics_file": str(self.file),
        }

    # -- the background thread ----------------------------------------------------------------

    def _put(self, op: Op) -> None:
        with self.cond:
            self.ops.append(op)
            self.cond.notify_all()

    def _work(self) -> None:
        quiet_mlflow_store_logs()
        client, backoff = None, 1.0
        while True:
            with self.cond:
                while not self.ops and self.closing_by is None:
                    self.cond.wait()
                if not self.ops:
                    return
                batch = self._take_batch()
            try:
                if client is None:
                    # optional dependency: its absence is handled below
                    from mlflow import MlflowClient

                    client = MlflowClient(self.uri)
                self._apply(client, batch)
                self._done(batch, sent=True)
                backoff = 1.0
            except DroppedError as err:
                logger.warning("MLflow: dropped %s (%s)", batch[0].kind, err)
                self._done(batch, sent=False)
            except Exception as err:  # busy, slow, unreachable: retry while the run goes on
                self.failures += 1
                self.last_error = f"{type(err).__name__}: {first_line(err)}"
                if self.failures == 1 or self.failures % 10 == 0:
                    logger.warning(
                        "MLflow store %s: %s; retrying in %.0fs (training goes on; metrics are "
                        "in %s)",
                        self.uri,
                        self.last_error,
                        backoff,
                        self.file,
                    )
                with self.cond:
                    if self.closing_by is not None:
                        return  # the run ended: the rest stays in metrics.jsonl
                    self.cond.wait(timeout=backoff)
                    if self.closing_by is not None:
                        return
                backoff = min(backoff * 2, MAX_BACKOFF_S)

    def _take_batch(self) -> list[Op]:
        """The next op, or consecutive metric ops merged (up to 1000 values: one call)."""
        first = self.ops[0]
        if first.kind != "metrics":
            return [first]
        batch, count = [], 0
        for op in self.ops:
            if op.kind != "metrics" or count + op.values > 1000:
                break
            batch.append(op)
            count += op.values
        return batch

    def _done(self, batch: list[Op], sent: bool) -> None:
        with self.cond:
            for _ in batch:
                self.ops.popleft()
            values = sum(op.values for op in batch)
            if sent:
                self.sent_values += values
            else:
                self.unsent_values += values
                self.dropped += sum(1 for op in batch if op.kind != "metrics")
            self.cond.notify_all()

    def _apply(self, client, batch: list[Op]) -> None:
        op = batch[0]
        if op.kind == "start":
            self._start(client, **op.args)
        elif self.run_id is None:
            raise RuntimeError("the MLflow run is not created yet")
        elif op.kind == "metrics":
            # start-up time: a heavy library, loaded when this runs
            from mlflow.entities import Metric

            metrics = [
                Metric(key, value, o.args["ms"], o.args["step"])
                for o in batch
                for key, value in o.args["metrics"].items()
            ]
            client.log_batch(self.run_id, metrics=metrics, synchronous=True)
        elif op.kind in ("artifact", "artifacts"):
            path = Path(op.args["path"])
            if not path.exists():
                raise DroppedError(f"{path} does not exist any more")
            log = client.log_artifact if op.kind == "artifact" else client.log_artifacts
            log(self.run_id, str(path), op.args["artifact_path"])
        elif op.kind == "end":
            client.set_terminated(self.run_id, op.args["status"])

    def _start(self, client, run_id: str | None, params: dict, resuming: bool) -> None:
        """Continue the run's MLflow run (the checkpoint's id; else, resuming, the newest run
        tagged with this run folder: a checkpoint saved before the store answered has no id),
        or create one with the config as its parameters."""
        # start-up time: a heavy library, loaded when this runs
        from mlflow.entities import Param

        # start-up time: a heavy library, loaded when this runs
        from mlflow.exceptions import MlflowException

        experiment = client.get_experiment_by_name(self.experiment)
        if run_id is None and resuming and experiment is not None:
            runs = client.search_runs(
                [experiment.experiment_id],
                filter_string=f"tags.`{FOLDER_TAG}` = '{self.file.parent}'",
                order_by=["attributes.start_time DESC"],
                max_results=1,
            )
            run_id = runs[0].info.run_id if runs else None
        if run_id is not None:
            try:
                client.get_run(run_id)
                client.update_run(run_id, status="RUNNING")
                self.run_id = run_id
                logger.info("MLflow: continuing run %s in %s", run_id, self.uri)
                return
            except MlflowException as err:
                if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
        if experiment is None:
            try:
                client.create_experiment(self.experiment, self.artifact_location)
            except MlflowException as err:  # another run created it in between
                if err.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
            experiment = client.get_experiment_by_name(self.experiment)
        tags = {FOLDER_TAG: str(self.file.parent)}
        if self.parent is not None:
            if self.parent.run_id is None and not self.parent.ended:
                raise RuntimeError("the parent MLflow run is not created yet")
            if self.parent.run_id is not None:
                tags["mlflow.parentRunId"] = self.parent.run_id
        # start-up time: a heavy library, loaded when this runs
        from mlflow.tracking.context.registry import resolve_tags

        run = client.create_run(
            experiment.experiment_id, tags=resolve_tags(tags), run_name=self.run_name
        )
        self.run_id = run.info.run_id
        items = [Param(k, str(v)[:500]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            client.log_batch(self.run_id, params=items[i : i + 100], synchronous=True)
        logger.info("MLflow: run %s in %s", self.run_id, self.uri)

    # -- metrics.jsonl on resume ----------------------------------------------------------------

    def _keep_lines_up_to(self, step: int) -> None:
        """A resumed run repeats the steps after its checkpoint: their lines go."""
        lines = read_lines(self.file)
        kept = []
        for line in lines:
            try:
                record_step = json.loads(line).get("step")
            except ValueError:
                continue
            if record_step is None or record_step <= step:
                kept.append(line)
        if len(kept) != len(lines) or (
            self.file.exists() and not self.file.read_text().endswith("\n")
        ):
            write_text_atomic(self.file, "".join(ln + "\n" for ln in kept))


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The records of a run's metrics.jsonl (NaN and inf are written as null)."""
    return [json.loads(line) for line in read_lines(Path(run_dir) / METRICS_FILE)]


def first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0][:300] if lines else ""


class _DropSqlTracebacks(logging.Filter):
    """MLflow logs a full traceback for every SQLite `database is locked`; the observer says
    it in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "SQLAlchemy database error" not in str(record.msg)


def quiet_mlflow_store_logs() -> None:
    store_logger = logging.getLogger("mlflow.store.db.utils")
    if not any(isinstance(f, _DropSqlTracebacks) for f in store_logger.filters):
        store_logger.addFilter(_DropSqlTracebacks())
