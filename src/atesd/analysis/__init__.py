"""Reports and plots built from run outputs."""
