"""Checks shared by the continual-learning tests of every SAM generation."""

from __future__ import annotations

import torch


def assert_routed_equals_each_module(continual, pixel_values, points, labels, domains, outputs=("pred_masks",)):
    """`continual` routing each image to `domains[i]` gives, for every output in `outputs`, what the PEFT model gives
    for that image alone with that module active (None: the base SAM). Returns the routed output."""
    with torch.no_grad():
        routed = continual(pixel_values, points, labels, domains=domains)
        for index, domain in enumerate(domains):
            with continual.use_module(domain):
                plain = continual.peft_model(
                    pixel_values=pixel_values[index : index + 1],
                    input_points=points[index : index + 1],
                    input_labels=labels[index : index + 1],
                    multimask_output=False,
                )
            for name in outputs:
                torch.testing.assert_close(
                    getattr(routed, name)[index : index + 1], getattr(plain, name), rtol=1e-5, atol=1e-5
                )
    assert routed.domains == list(domains)
    return routed
