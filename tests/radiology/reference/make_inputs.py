"""Write the input of the R ComBat reference (run once; the CSVs are committed).

python tests/radiology/reference/make_inputs.py && Rscript tests/radiology/reference/combat.R
"""

from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).parent


def main() -> None:
    rng = np.random.default_rng(20240607)
    sites = np.repeat(["A", "B", "C"], [25, 20, 15])
    n, g = len(sites), 12
    age = rng.uniform(30, 80, n).round(1)
    sex = rng.choice(["F", "M"], n)
    biology = 0.03 * (age - 55)[:, None] * rng.normal(1, 0.3, g) + 0.8 * (sex == "M")[:, None]
    shift = {"A": 0.0, "B": 1.5, "C": -1.0}
    scale = {"A": 1.0, "B": 2.0, "C": 0.6}
    x = np.empty((n, g))
    for j in range(n):
        s = sites[j]
        x[j] = 10 + biology[j] + shift[s] * rng.normal(1, 0.2, g) + scale[s] * rng.normal(0, 1, g)
    frame = pd.DataFrame(x, columns=[f"f{k:02d}" for k in range(g)])
    frame.insert(0, "sex", sex)
    frame.insert(0, "age", age)
    frame.insert(0, "site", sites)
    frame.index = [f"S{j:03d}" for j in range(n)]
    frame.index.name = "sample"
    frame.to_csv(HERE / "combat_input.csv", float_format="%.10g")
    # The same data with missing values (a sequence missing for some patients): 10% of the
    # cells of the first eight features, at least three values left per feature and site.
    holes = np.random.default_rng(7).random((n, g)) < 0.10
    holes[:, 8:] = False
    features = [f"f{k:02d}" for k in range(g)]
    frame[features] = frame[features].mask(holes)
    frame.to_csv(HERE / "combat_input_missing.csv", float_format="%.10g", na_rep="NA")


if __name__ == "__main__":
    main()
