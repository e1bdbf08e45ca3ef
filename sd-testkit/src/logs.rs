//! [`LogCapture`]: an in-memory sink for a `tracing` fmt subscriber, for tests that check
//! what a backend logs (for example that a secret never appears).

use std::io::Write;
use std::sync::{Arc, Mutex};

/// Everything written to it, shared by its clones: hand a clone to a fmt subscriber's
/// `with_writer(move || capture.clone())` and read [`LogCapture::text`] afterwards.
///
/// ```
/// use std::io::Write;
/// let capture = sd_testkit::LogCapture::default();
/// let mut writer = capture.clone();
/// writer.write_all(b"registered web-1").unwrap();
/// assert_eq!(capture.text(), "registered web-1");
/// ```
#[derive(Clone, Debug, Default)]
pub struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl LogCapture {
    /// What was written so far, as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}

impl Write for LogCapture {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
