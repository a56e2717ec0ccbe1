"""Generate the isolator's monitoring as code: dashboards, rules and example configs.

``python -m monitoring_gen`` (``make generate``) writes every generated file into the
repository; tests/monitoring/ regenerates them into a temporary folder and fails when the
committed files differ.
"""
