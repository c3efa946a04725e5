"""Signed webhooks: the dispatcher (``dispatcher``) consumes the propensity topics and
delivers them per Standard Webhooks (``signing``), through an SSRF guard (``ssrf``)."""
