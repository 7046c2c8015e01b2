"""Rollout side: engines that sample groups of completions, and the Ray actor that owns one."""
