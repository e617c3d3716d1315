"""Models: SPAIR, the ConnComp baseline, AIR/DAIR, and the ops they share."""
