"""Studies beside the pipeline, each a stage of studies/dvc.yaml (`dvc repro studies/dvc.yaml`; `make run` does
not run them): music.studies.choices rechecks the training choices params.yaml records on the development split."""
