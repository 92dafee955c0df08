"""Measurement: this machine's clock and figures, calibration, measured runs beside predictions,
and the cross-check of fusion against torch.compile's Inductor."""
