"""Floor 3: annotators (features) and the LightGBM blender. Imports from retriever and core."""
