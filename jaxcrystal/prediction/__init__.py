"""Property prediction: registered regressors (`regressors.py`) and their
training and prediction (`train.py`), used to score generated structures
against the property they were asked for."""
