"""Reports rebuilt from saved run directories: pandas tables, convergence curves, CAM pictures."""
