"""The local model cache: packaged models converted once into plain, loadable directories."""
