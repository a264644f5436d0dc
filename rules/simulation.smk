rule simulation:
    """Appendix B.2: discrepancy E[KL(oracle || model)] of a one-hot-trained and a
    soft-label-trained model on synthetic labels (binary and k-class Dirichlet). CPU, seconds."""
    conda:
        "../envs/report.yaml"
    output:
        binary_csv=f"{R}/simulation/binary.csv",
        binary_md=f"{R}/simulation/binary.md",
        dirichlet_csv=f"{R}/simulation/dirichlet.csv",
        dirichlet_md=f"{R}/simulation/dirichlet.md",
        provenance=f"{R}/simulation/provenance.json",
        png=report(f"{R}/figures/simulation_discrepancy.png", caption="../report/simulation.rst", category="Appendix B"),
        pdf=f"{R}/figures/simulation_discrepancy.pdf",
    params:
        settings={"seed": config["seed"], **config["simulation"]},
    resources:
        **res("light"),
    log:
        f"{R}/logs/simulation/simulation.log",
    script:
        "../workflow_scripts/simulation.py"
