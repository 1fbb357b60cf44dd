"""Test-session hygiene shared by every test module."""
import logging

import pytest


def _closed_stream_handlers() -> list[tuple[logging.Logger, logging.Handler]]:
    loggers = [logging.getLogger()] + [lg for lg in logging.root.manager.loggerDict.values() if isinstance(lg, logging.Logger)]
    return [(lg, h) for lg in loggers for h in lg.handlers if isinstance(h, logging.StreamHandler) and getattr(h.stream, "closed", False)]


@pytest.fixture(autouse=True)
def _drop_handlers_on_closed_streams():
    """Remove logging handlers left writing to a stream pytest has closed.

    A bundle run in a test process configures its loggers (``logging.conf``, ``monai.apps.get_logger``)
    with ``sys.stdout`` as pytest's capture has it at that moment; after the test that stream is closed,
    and the next record on those loggers (for example MONAI's nvImageCodec notice when a later test builds
    a DICOM reader) printed "--- Logging error ---" with a traceback instead.
    """
    yield
    for logger, handler in _closed_stream_handlers():
        logger.removeHandler(handler)
