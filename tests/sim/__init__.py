"""A simulated customer population with known ground-truth propensity (issue 4)."""
