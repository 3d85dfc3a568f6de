"""fastai training recipes and the `pipelines` command line."""
