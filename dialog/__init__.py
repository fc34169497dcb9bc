"""Floor 1 (top): the product — pipeline, gRPC server, CLI, generation, editor and labeling tools."""
