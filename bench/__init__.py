"""storyflow's benchmark: `python -m bench [--quick]` prints a markdown table of storyflow against baselines."""
