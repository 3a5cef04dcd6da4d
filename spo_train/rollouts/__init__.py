"""Rollouts: sample, judge and commit to the lake; local and Ray behind one
protocol (`sources.RolloutSource`)."""
