"""One caption per figure and table of the report, by file name (report/plots/{name}.png,
report/tables/{name}.html). The report prints them under each item; the Snakemake report shows
them beside each registered file (workflow/rules/report.smk hands this dict to the caption
templates). Light: Snakemake imports it at parse time.
"""
FIGURES = {
    "ppl_vs_tokens": "Perplexity vs sparse-training tokens, one panel per held-out domain (rows) and model size "
                     "(columns): trained methods (CAST, SR-STE, the dense control) as curves with markers (mean, "
                     "bars = sd over seeds), one-shot methods as dashed horizontal lines (they spend no tokens), "
                     "the dense teacher as a thin black line. Colour = method. Lower is better.",
    "loss_vs_tokens": "Scaling law: observed points (markers) and fitted laws (lines) per model size (colour); left the "
                      "test loss L = log perplexity (dotted: the dense teacher), right the gap to the reference.",
    "predicted_vs_observed": "Scaling law: predicted vs observed, in-sample, leave-one-out and extrapolated (largest "
                             "budget held out, largest size held out); on the dashed diagonal a prediction is exact.",
    "training_curves": "Training curves from MLflow per model size (columns): colour = method, line style = budget, "
                       "x = training tokens; losses are window means over each logging interval.",
}

TABLES = {
    "headline": "Headline: perplexity of each method at its largest budget, per model size; mean ± sd over seeds "
                "where several ran; differences relative to the dense control at equal tokens and to the dense "
                "teacher; ★ = best N:M model of its size.",
    "domains": "Perplexity per held-out domain at the largest size, each method at its largest budget; ★ = best "
               "N:M model per domain.",
    "seeds": "Differences between the methods trained with several seeds (largest size, largest budget): mean "
             "difference of perplexity ± its standard error per domain; * marks differences beyond two standard errors.",
    "ablation": "Ablations at the largest size and budget: what each variant changes in the method's config, its "
                "perplexity and the difference to the full method.",
    "ppl": "Perplexity (and bits per byte where tokenizers differ) of every plain model; constant columns are "
           "listed under the table.",
    "zeroshot": "Zero-shot scores through lm-eval, value ± standard error; constant columns are listed under the table.",
    "quant": "Weight-only quantization: each quantized model beside its unquantized source.",
    "finetune": "Downstream fine-tuning: each fine-tuned model beside its source (the N:M mask stays frozen).",
    "fit_loss_law": "Loss-law parameters: value, covariance standard error, bootstrap 95% interval.",
    "fit_gap_law": "Gap-law parameters: value, covariance standard error, bootstrap 95% interval.",
    "fit_gap_teacher_law": "Parameters of the gap to the teacher: value, covariance standard error, bootstrap 95% interval.",
    "scaling_points": "The points of the scaling-law fit, read back from MLflow.",
}


def caption(name: str) -> str:
    return FIGURES.get(name) or TABLES.get(name) or name
