"""medtl: transfer-learning experiments for medical imaging."""
