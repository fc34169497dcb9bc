"""Long jobs, one module each: a plain function that takes its config and returns its report."""
