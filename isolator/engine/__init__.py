"""The control loop: evidence, classification, safety and actions."""
