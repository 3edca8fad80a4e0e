"""Models: the SQR schedule, matcher and criterion, backbones, converters, detectors."""
