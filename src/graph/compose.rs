//! Sending mail: drafts, replies and forwards, the marker property that finds a draft again,
//! attachments and upload sessions, send, and the look-ups that confirm a send.
