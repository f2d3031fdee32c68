"""Generation: Ray `GenerationWorker` actors around an engine (registry: `rollout.engines`)."""
