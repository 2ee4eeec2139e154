//! Words for figures: human titles for the quantity keys the commands use
//! (`train_loss`, `abs_ratio_min_max`, ...) and the labels of one figure.

/// The human name of a quantity key, or `None` for a key not listed.
///
/// Keys are those of the JSON results and file suffixes; figures show the name.
pub fn quantity_name(key: &str) -> Option<&'static str> {
    Some(match key {
        "train_loss" => "training loss",
        "test_loss" => "test loss",
        "train_error" | "train_err" => "training error",
        "test_error" | "test_err" => "test error",
        "train_acc" | "train_accuracy" => "training accuracy",
        "test_acc" | "test_accuracy" => "test accuracy",
        "lambda_max" => "largest Hessian eigenvalue \u{3bb}_max",
        "lambda_min" => "smallest Hessian eigenvalue \u{3bb}_min",
        "abs_ratio_min_max" => "non-convexity |\u{3bb}_min / \u{3bb}_max|",
        "trace" => "Hessian trace",
        "log_train_loss" | "ln_train_loss" => "ln(training loss)",
        "log_test_loss" | "ln_test_loss" => "ln(test loss)",
        _ => return None,
    })
}

/// `s` with every listed quantity key replaced by its name (a key must be the
/// whole string, or a whole word separated by spaces); other text unchanged.
pub fn humanize(s: &str) -> String {
    if let Some(n) = quantity_name(s) {
        return n.to_string();
    }
    s.split(' ')
        .map(|w| quantity_name(w).map_or_else(|| w.to_string(), str::to_string))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Spacing of contour levels between a map's minimum and maximum.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ContourSpacing {
    /// `lo + (hi - lo) k / (n + 1)`, `k = 1..n`.
    #[default]
    Linear,
    /// `lo (hi / lo)^(k / (n + 1))`: geometric, resolving the basin of a loss
    /// (Li et al.'s contours); falls back to linear when `lo <= 0`.
    Log,
}

/// The `n` contour levels strictly between `lo < hi` (empty when `lo >= hi`).
pub fn contour_levels(lo: f64, hi: f64, n: usize, spacing: ContourSpacing) -> Vec<f64> {
    if hi <= lo {
        return Vec::new();
    }
    let f = |k: usize| k as f64 / (n + 1) as f64;
    match spacing {
        ContourSpacing::Log if lo > 0.0 => (1..=n).map(|k| lo * (hi / lo).powf(f(k))).collect(),
        _ => (1..=n).map(|k| lo + (hi - lo) * f(k)).collect(),
    }
}

/// The words on one figure. Empty strings are left out.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FigureLabels {
    /// Title, in words (see [`humanize`]).
    pub title: String,
    /// What the x axis measures (e.g. "filter-normalised random direction 1").
    pub x_label: String,
    /// What the y axis measures.
    pub y_label: String,
    /// The colour bar's quantity (heat maps).
    pub colorbar: String,
    /// Model, data and sample count, drawn under the plot.
    pub caption: String,
}

impl FigureLabels {
    /// Labels for a map of the quantity `key` (title and colour bar named by
    /// [`humanize`]), with generic axis names.
    pub fn for_quantity(key: &str) -> Self {
        let name = humanize(key);
        Self {
            title: name.clone(),
            x_label: "direction 1".into(),
            y_label: "direction 2".into(),
            colorbar: name,
            caption: String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_become_words() {
        assert_eq!(humanize("train_loss"), "training loss");
        // Subscripts such as lambda_min stay; the identifier itself does not.
        assert!(humanize("abs_ratio_min_max").starts_with("non-convexity |"));
        assert_eq!(humanize("eigen train_loss"), "eigen training loss");
        assert_eq!(humanize("something else"), "something else");
    }

    #[test]
    fn log_levels_are_geometric() {
        let l = contour_levels(0.01, 100.0, 3, ContourSpacing::Log);
        // 0.01 * 10^4^(k/4): 0.1, 1, 10.
        for (a, b) in l.iter().zip([0.1, 1.0, 10.0]) {
            assert!((a / b - 1.0).abs() < 1e-12, "{a} vs {b}");
        }
        let lin = contour_levels(-1.0, 1.0, 3, ContourSpacing::Log);
        assert_eq!(lin, vec![-0.5, 0.0, 0.5]);
        assert!(contour_levels(1.0, 1.0, 3, ContourSpacing::Linear).is_empty());
    }
}
