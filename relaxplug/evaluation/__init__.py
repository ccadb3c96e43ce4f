"""Evaluation: certify a data set, metrics, certifier comparison, reports, model sources."""
