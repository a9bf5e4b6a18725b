//! How a simulated vehicle moves, so that GPS reports look like a car and not like noise:
//! a point travelling along a heading that turns gently, at a speed that drifts around a
//! cruising speed, with an odometer. Pure and seeded, so tests can check the physics.
//!
//! Fix times advance by whole seconds and never repeat for one vehicle: the push receiver
//! matches a delivered `/pushgps` record to the fix that produced it by IMEI + `gpsTime`, and
//! `gpsTime` has a resolution of one second.

use chrono::{DateTime, Duration as ChronoDuration, SubsecRound, Utc};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Metres per degree of latitude (mean Earth radius 6 371 km).
const METRES_PER_DEGREE: f64 = 111_194.9;

/// One GPS fix as a tracker reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Fix {
    /// UTC, whole seconds (the GT06 GPS block has no sub-second field).
    pub time: DateTime<Utc>,
    /// Signed decimal degrees, south negative.
    pub latitude: f64,
    /// Signed decimal degrees, west negative.
    pub longitude: f64,
    pub speed_kmh: u8,
    /// 0..=359, 0 = north, clockwise.
    pub course: u16,
    pub satellites: u8,
    /// Odometer in metres.
    pub odometer_m: u32,
}

impl Fix {
    /// A stationary fix at a given place and time (for tests that need one exact frame).
    pub fn at(time: DateTime<Utc>, latitude: f64, longitude: f64) -> Fix {
        Fix {
            time: time.trunc_subsecs(0),
            latitude,
            longitude,
            speed_kmh: 0,
            course: 0,
            satellites: 9,
            odometer_m: 0,
        }
    }
}

/// Parameters of the movement model.
#[derive(Debug, Clone, PartialEq)]
pub struct MovementConfig {
    /// Centre of the area vehicles start in.
    pub center: (f64, f64),
    /// Half-width of the start area, in degrees.
    pub spread_deg: f64,
    /// Speed the vehicle drifts back towards, km/h.
    pub cruise_kmh: f64,
    /// Hard ceiling, km/h (a GT06 speed byte holds at most 255).
    pub max_kmh: f64,
    /// Largest heading change per second of travel, degrees.
    pub max_turn_deg_per_s: f64,
}

impl Default for MovementConfig {
    fn default() -> Self {
        MovementConfig {
            // Shenzhen, where the sample pushes of the Jimi documentation come from.
            center: (22.5431, 114.0579),
            spread_deg: 0.2,
            cruise_kmh: 50.0,
            max_kmh: 120.0,
            max_turn_deg_per_s: 6.0,
        }
    }
}

/// A simulated vehicle.
#[derive(Debug, Clone)]
pub struct Mover {
    config: MovementConfig,
    rng: SmallRng,
    latitude: f64,
    longitude: f64,
    /// Degrees, 0 = north, clockwise, in [0, 360).
    heading: f64,
    speed_kmh: f64,
    odometer_m: f64,
    last_time: Option<DateTime<Utc>>,
}

impl Mover {
    /// A vehicle at a random place and heading inside the configured area; `seed` makes the
    /// whole trajectory reproducible.
    pub fn new(config: MovementConfig, seed: u64) -> Mover {
        let mut rng = SmallRng::seed_from_u64(seed);
        let spread = config.spread_deg.abs();
        let latitude = (config.center.0 + rng.random_range(-spread..=spread)).clamp(-85.0, 85.0);
        let longitude = wrap_longitude(config.center.1 + rng.random_range(-spread..=spread));
        let heading = rng.random_range(0.0..360.0);
        let speed_kmh =
            (config.cruise_kmh * rng.random_range(0.5..=1.2)).clamp(0.0, config.max_kmh);
        Mover {
            config,
            rng,
            latitude,
            longitude,
            heading,
            speed_kmh,
            odometer_m: 0.0,
            last_time: None,
        }
    }

    /// Advances the vehicle to `now` and returns the fix a GPS would report.
    ///
    /// The fix time is `now` truncated to the second, or one second after the previous fix if
    /// that would not be later (so fix times of one vehicle are unique).
    pub fn fix_at(&mut self, now: DateTime<Utc>) -> Fix {
        let now = now.trunc_subsecs(0);
        let time = match self.last_time {
            Some(last) if now <= last => last + ChronoDuration::seconds(1),
            _ => now,
        };
        let elapsed_s = match self.last_time {
            Some(last) => (time - last).num_milliseconds() as f64 / 1000.0,
            None => 0.0,
        };
        self.advance(elapsed_s.min(3600.0));
        self.last_time = Some(time);
        Fix {
            time,
            latitude: self.latitude,
            longitude: self.longitude,
            speed_kmh: self.speed_kmh.round().clamp(0.0, 255.0) as u8,
            course: (self.heading.round() as u16) % 360,
            satellites: self.rng.random_range(6..=14),
            odometer_m: self.odometer_m.min(f64::from(u32::MAX)) as u32,
        }
    }

    /// Moves along the current heading for `seconds`, then turns and changes speed a little.
    fn advance(&mut self, seconds: f64) {
        if seconds <= 0.0 {
            return;
        }
        let distance_m = self.speed_kmh / 3.6 * seconds;
        let heading_rad = self.heading.to_radians();
        let dlat = distance_m * heading_rad.cos() / METRES_PER_DEGREE;
        let metres_per_lon_degree = METRES_PER_DEGREE * self.latitude.to_radians().cos().max(0.01);
        let dlon = distance_m * heading_rad.sin() / metres_per_lon_degree;
        self.latitude += dlat;
        self.longitude = wrap_longitude(self.longitude + dlon);
        if self.latitude.abs() > 85.0 {
            // Turn back rather than cross a pole.
            self.latitude = self.latitude.clamp(-85.0, 85.0);
            self.heading = (self.heading + 180.0) % 360.0;
        }
        self.odometer_m += distance_m;

        let max_turn = self.config.max_turn_deg_per_s * seconds.min(30.0);
        if max_turn > 0.0 {
            let turn = self.rng.random_range(-max_turn..=max_turn);
            self.heading = (self.heading + turn).rem_euclid(360.0);
        }
        // Mean-reverting speed: pulled towards cruise, with noise proportional to the step.
        let pull = (self.config.cruise_kmh - self.speed_kmh) * 0.1;
        let noise = self.rng.random_range(-3.0..=3.0) * seconds.min(10.0).sqrt();
        self.speed_kmh = (self.speed_kmh + pull + noise).clamp(0.0, self.config.max_kmh);
    }
}

fn wrap_longitude(lon: f64) -> f64 {
    (lon + 180.0).rem_euclid(360.0) - 180.0
}

/// Great-circle distance in metres (haversine), used to check the model.
pub fn distance_m(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (lat1, lon1) = (a.0.to_radians(), a.1.to_radians());
    let (lat2, lon2) = (b.0.to_radians(), b.1.to_radians());
    let h = ((lat2 - lat1) / 2.0).sin().powi(2)
        + lat1.cos() * lat2.cos() * ((lon2 - lon1) / 2.0).sin().powi(2);
    2.0 * 6_371_000.0 * h.sqrt().asin()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 3, 1, 12, 0, 0)
            .single()
            .unwrap_or_default()
    }

    #[test]
    fn same_seed_same_trajectory() {
        let mut a = Mover::new(MovementConfig::default(), 7);
        let mut b = Mover::new(MovementConfig::default(), 7);
        for s in 0..20 {
            let now = t0() + ChronoDuration::seconds(s);
            assert_eq!(a.fix_at(now), b.fix_at(now));
        }
    }

    #[test]
    fn starts_inside_the_area() {
        let config = MovementConfig::default();
        for seed in 0..50 {
            let fix = Mover::new(config.clone(), seed).fix_at(t0());
            assert!((fix.latitude - config.center.0).abs() <= config.spread_deg + 1e-9);
            assert!((fix.longitude - config.center.1).abs() <= config.spread_deg + 1e-9);
        }
    }

    #[test]
    fn distance_travelled_matches_speed() {
        let mut mover = Mover::new(MovementConfig::default(), 3);
        let mut prev = mover.fix_at(t0());
        for s in 1..=120 {
            let fix = mover.fix_at(t0() + ChronoDuration::seconds(s));
            let moved = distance_m(
                (prev.latitude, prev.longitude),
                (fix.latitude, fix.longitude),
            );
            // The step uses the speed held before the step; the reported speed is rounded.
            let expected = f64::from(prev.speed_kmh) / 3.6;
            assert!(
                (moved - expected).abs() < 1.0,
                "second {s}: moved {moved:.2} m at {} km/h",
                prev.speed_kmh
            );
            prev = fix;
        }
    }

    #[test]
    fn speed_and_course_stay_in_range() {
        let mut mover = Mover::new(MovementConfig::default(), 11);
        for s in 0..3600 {
            let fix = mover.fix_at(t0() + ChronoDuration::seconds(s));
            assert!(f64::from(fix.speed_kmh) <= MovementConfig::default().max_kmh);
            assert!(fix.course < 360);
        }
    }

    #[test]
    fn heading_changes_gently() {
        let mut mover = Mover::new(MovementConfig::default(), 5);
        let mut prev = mover.fix_at(t0());
        for s in 1..600 {
            let fix = mover.fix_at(t0() + ChronoDuration::seconds(s));
            let diff = (i32::from(fix.course) - i32::from(prev.course)).rem_euclid(360);
            let turn = diff.min(360 - diff);
            // 6 degrees per second, plus rounding of both courses.
            assert!(turn <= 7, "second {s}: turned {turn} degrees");
            prev = fix;
        }
    }

    #[test]
    fn odometer_grows_with_distance() {
        let mut mover = Mover::new(MovementConfig::default(), 9);
        let first = mover.fix_at(t0());
        let mut total = 0.0;
        let mut prev = first.clone();
        for s in 1..=300 {
            let fix = mover.fix_at(t0() + ChronoDuration::seconds(s));
            total += distance_m(
                (prev.latitude, prev.longitude),
                (fix.latitude, fix.longitude),
            );
            prev = fix;
        }
        let odometer = f64::from(prev.odometer_m - first.odometer_m);
        assert!(
            (odometer - total).abs() < 5.0,
            "odometer {odometer} vs path {total}"
        );
    }

    #[test]
    fn fix_times_are_unique_even_when_called_twice_a_second() {
        let mut mover = Mover::new(MovementConfig::default(), 1);
        let a = mover.fix_at(t0());
        let b = mover.fix_at(t0() + ChronoDuration::milliseconds(300));
        let c = mover.fix_at(t0() + ChronoDuration::milliseconds(600));
        assert_eq!(b.time, a.time + ChronoDuration::seconds(1));
        assert_eq!(c.time, a.time + ChronoDuration::seconds(2));
    }

    #[test]
    fn fix_times_have_no_subseconds() {
        let mut mover = Mover::new(MovementConfig::default(), 1);
        let fix = mover.fix_at(t0() + ChronoDuration::milliseconds(1750));
        assert_eq!(fix.time, t0() + ChronoDuration::seconds(1));
    }

    #[test]
    fn longitude_wraps_at_the_antimeridian() {
        assert!((wrap_longitude(181.0) - -179.0).abs() < 1e-9);
        assert!((wrap_longitude(-181.0) - 179.0).abs() < 1e-9);
    }
}
