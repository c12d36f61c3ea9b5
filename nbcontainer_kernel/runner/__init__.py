"""What runs inside a run image: `nbcontainer-run` (and `train`, for SageMaker)."""
