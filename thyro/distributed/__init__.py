"""The Ray shell: the experiment, tune, score and pretrain jobs on Ray. Nothing else imports Ray."""
