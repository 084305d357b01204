//! Measurement deltas as the fleet stream carries them.

use weir_protos::control as pb;
use weir_proxy::MeasurementDelta;

/// A delta as sent.
pub fn to_pb(d: MeasurementDelta) -> pb::VersionDelta {
    pb::VersionDelta {
        service: d.service,
        version: d.version,
        mirrored: d.mirrored,
        responses: d.responses.to_vec(),
        failures: d.failures.into_iter().collect(),
        client_faults: d.client_faults.into_iter().collect(),
        codes: d
            .codes
            .into_iter()
            .map(|(c, n)| (u32::from(c), n))
            .collect(),
        buckets: d.buckets,
        sum_micros: d.sum_micros,
        latency: d.latency,
    }
}

/// A delta as received; None when its shape is wrong (counted as malformed).
pub fn from_pb(d: pb::VersionDelta) -> Option<MeasurementDelta> {
    let responses: [u64; 5] = d.responses.try_into().ok()?;
    let codes = d
        .codes
        .into_iter()
        .map(|(c, n)| Some((u16::try_from(c).ok()?, n)))
        .collect::<Option<Vec<_>>>()?;
    Some(MeasurementDelta {
        service: d.service,
        version: d.version,
        mirrored: d.mirrored,
        responses,
        failures: d.failures.into_iter().collect(),
        client_faults: d.client_faults.into_iter().collect(),
        codes,
        buckets: d.buckets,
        sum_micros: d.sum_micros,
        latency: d.latency,
    })
}
