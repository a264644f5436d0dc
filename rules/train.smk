# Teachers, substitutes and students: one training script, the role from the rule.
# params.spec is what the job computes (ltd.jobspec.Training), params.identity the part of
# it that defines the trained model: editing any of that reruns the run and what depends
# on it. Besides its outputs a job writes history.jsonl (per epoch, as it goes),
# curves.png/.pdf (when it finishes) and TensorBoard files (tensorboard/training/) into
# its run folder: `tensorboard --logdir results/<run>`.


# One rule per role (train_teacher, train_substitute, train_student): teachers train
# naturally on one-hot labels, substitutes on the teacher's soft labels at T (the T_max
# search), students by their method (TRADES, ..., with or without LTD's soft labels).
for _role, _rule in (("teachers", "train_teacher"), ("substitutes", "train_substitute"), ("students", "train_student")):

    rule:
        name:
            _rule
        conda:
            "../envs/torch.yaml"
        input:
            unpack(training_inputs(_role)),
        output:
            **training_outputs(_role),
        params:
            spec=job_spec("train", _role),
            role=_role,  # unused by the job, but in finished runs' recorded params: dropping it would rerun them
            identity=job_identity("train", _role),
        threads: train_threads(_role)
        retries: retries("train")
        resources:
            **gpu_job("train", dataset_of(_role), training_job(_role), train_threads(_role), training=True),
        log:
            f"{R}/logs/{_role}/{{name}}.log",
        script:
            "../workflow_scripts/train.py"
