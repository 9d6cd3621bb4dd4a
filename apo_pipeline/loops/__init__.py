"""The loops: OnMC-PO (`onmcpo`), iterative APO (`apo`), offline MC-PO (`mcpo`)."""
