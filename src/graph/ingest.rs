//! Reading mail: delta pages, `$batch` fetches of what a delta item lacks, and what is
//! done to a message once it is delivered.
