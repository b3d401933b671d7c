"""Offline routing tools: train a learned router, calibrate its threshold, evaluate it.

They live apart from `routing/` on purpose. `routing/` is the online policy the server
runs on every request; these tools run offline on labelled CSVs and need scikit-learn
(training) and matplotlib (plots), which the server must not depend on. Install them with
the `[train]` extra (`pip install -e ".[train]"`; `make install` includes it).

- `routing.training.train`: the CSV data format, labels, `train_router`, `train-router`.
- `routing.training.calibration`: the threshold for a target strong-model share.
- `routing.training.evaluation`: RouteLLM's metrics (APGR, CPT) and the accuracy plot.
- `routing.training.families`: fitting each router family (lr, knn, mf, mlp).
- `routing.training.crossval`: families compared on grouped folds (`eval --split-by`).
- `routing.training.multipool`: N-pool costs and calibrating the choice rule.
- `routing.training.embedding_cache`: embeddings on disk by content hash.
- `routing.training.cli`: the `switchyard` command dispatching to all of them.

The server only loads the trained router file: `routing.learned` (numpy scoring).
"""
