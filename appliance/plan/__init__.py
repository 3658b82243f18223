"""Planning: hardware profiles, profile selection, fit, engine command lines, the plan report, the inventory."""
