"""The driver: orchestrates rollout workers and the learner for training and evaluation.

One module per concern: `train` (the step loop), `evaluate` (art-eval), `submit` (Ray jobs),
`cli` (the Hydra entry), `cluster` (Ray, placement, actors), `rollouts` (prompts, fan-out,
broadcast) and `tracking` (MLflow and run outputs). The driver creates the learner from
`learner.learner.Learner`; the rollout worker class comes from its import path in the config
(`rollout.worker_cls`), because `learner/` never imports `rollout_worker/`.
"""
