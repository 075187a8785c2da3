//! Money: integer minor units and an ISO 4217 currency code everywhere in the pipeline, turned
//! into currency units only where a number leaves for Prometheus or a terminal.

/// Digits after the decimal point of `currency` (ISO 4217); 2 for codes not listed.
pub fn minor_unit_exponent(currency: &str) -> i32 {
    match currency {
        "JPY" | "KRW" | "VND" | "CLP" | "ISK" | "UGX" => 0,
        "BHD" | "KWD" | "OMR" | "JOD" | "TND" => 3,
        _ => 2,
    }
}

/// An amount in minor units as currency units, for export (`1234` CNY fen is `12.34` yuan).
pub fn minor_to_major(amount_minor: impl Into<i128>, currency: &str) -> f64 {
    amount_minor.into() as f64 / 10f64.powi(minor_unit_exponent(currency))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minor_units_follow_each_currencys_exponent() {
        assert_eq!(minor_to_major(1_234, "CNY"), 12.34);
        assert_eq!(minor_to_major(1_234, "JPY"), 1_234.0);
        assert_eq!(minor_to_major(1_234, "KWD"), 1.234);
    }
}
