"""Charts of stored runs (issue 43): the sweep, the card, breakdowns and errors, built from the
aggregates only (metrics.json, judge aggregates, the card's result, runs.json), never from the
items, so a report of 100k items costs no more to open. `chart.py` is the data, one module per
chart kind builds it, `draw.py` draws it with matplotlib (imported there, lazily), `charts.py`
gathers what a set of runs has."""
