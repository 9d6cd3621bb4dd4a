"""Ray actors of the pipeline: generation pool, judge, learner group, weight sync, placement."""
