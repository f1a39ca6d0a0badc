"""The web view: an HTML dashboard and a JSON API over the study tables, served by each worker's Faust web server.

:mod:`web.render` and :mod:`web.auth` are pure (state → rows, HTML; header → allowed?); :mod:`web.views`
registers the Faust pages on an app (``app.stream_app.build_worker`` calls it).
"""
