"""The console line is short: total loss first, per-stage terms summed over the stages."""

from __future__ import annotations

import logging

from sqr.utils.events import CommonMetricPrinter, EventStorage


def test_console_line_puts_total_first_and_sums_stages(caplog) -> None:
    with EventStorage(0) as storage:
        for stage, (cls, giou) in enumerate([(1.0, 0.5), (0.75, 0.25), (0.5, 0.125)]):
            storage.put_scalar(f"loss_class_s{stage}", cls)
            storage.put_scalar(f"loss_giou_s{stage}", giou)
        storage.put_scalar("loss_class_enc", 0.0625)
        storage.put_scalar("total_loss", 3.3125)
        storage.put_scalar("time", 0.5)
        with caplog.at_level(logging.INFO, logger="sqr.utils.events"):
            CommonMetricPrinter(max_iter=10).write()
    (line,) = [r.getMessage() for r in caplog.records]
    losses = line.split("iter: 0  ")[1].split("  time:")[0]
    # 1 + 0.75 + 0.5 = 2.25 and 0.5 + 0.25 + 0.125 = 0.875; the two-stage term stays apart.
    assert losses == "total_loss: 3.312  loss_class_enc: 0.0625  loss_class: 2.25  loss_giou: 0.875"
    assert len(line) < 200


def test_history_is_bounded() -> None:
    with EventStorage(0, max_history=5) as storage:
        for iteration in range(12):
            storage.iter = iteration
            storage.put_scalar("loss", float(iteration))
        values = storage.history("loss").values()
    assert [it for _, it in values] == [7, 8, 9, 10, 11]
    assert storage.latest("loss") == (11.0, 11)
