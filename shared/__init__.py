"""What the rollout workers, the learner and the driver share.

Light dependencies only: no vLLM, no Ray, no model code (a test asserts it). Holds the image
artifact (PNG <-> uint8 array), the typed messages that cross process boundaries, prompt
rendering, tasks and rewards, and the config schema.
"""
