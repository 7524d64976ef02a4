"""Large-scale training scripts (launched with torchrun); importable for tests."""
