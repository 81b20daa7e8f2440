//! The status page's style sheet and its one script, kept apart from the markup.

/// The page's only style sheet, inline (its CSP admits it by nonce). Colours are picked for
/// at least 4.5:1 contrast on their backgrounds; the layout is cards that wrap down to 320 px.
pub const STYLE: &str = r#"
:root { color: #1a1a1a; background: #ffffff; font: 16px/1.45 system-ui, sans-serif; }
body { margin: 0 auto; padding: 1rem; max-width: 72rem; }
h1 { font-size: 1.5rem; margin: 0; } h2 { font-size: 1.2rem; margin: 1.5rem 0 .5rem; }
header { display: flex; flex-wrap: wrap; gap: .5rem 1rem; align-items: center; justify-content: space-between; }
.muted { color: #4a4a4a; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(min(100%, 20rem), 1fr)); gap: .75rem; }
.card { border: 1px solid #8a8a8a; border-radius: .4rem; padding: .75rem; background: #ffffff; min-width: 0; }
.card h3 { font-size: 1rem; margin: 0 0 .4rem; overflow-wrap: anywhere; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: .15rem .6rem; margin: 0; }
dt { color: #4a4a4a; } dd { margin: 0; overflow-wrap: anywhere; min-width: 0; }
.state { display: inline-block; padding: 0 .4rem; border-radius: .3rem; font-weight: 600; }
.ok { background: #e3f1e6; color: #14532d; } .wait { background: #fff1d6; color: #5c3a00; }
.bad { background: #fde4e1; color: #7f1d1d; } .off { background: #ececec; color: #333333; }
.button, button { display: inline-block; font: inherit; padding: .3rem .8rem; border-radius: .3rem; border: 1px solid #0a3f9c;
  background: #0b4fc0; color: #ffffff; text-decoration: none; cursor: pointer; }
button.quiet { background: #ffffff; color: #0a3f9c; }
.notice { border-left: .3rem solid #14532d; background: #e3f1e6; color: #14532d; padding: .5rem .75rem; }
.error { border-left: .3rem solid #7f1d1d; background: #fde4e1; color: #7f1d1d; padding: .5rem .75rem; }
ul.list { list-style: none; padding: 0; margin: 0; display: grid; gap: .5rem; }
ul.list li { border: 1px solid #8a8a8a; border-radius: .4rem; padding: .5rem .75rem; overflow-wrap: anywhere; }
form.inline { display: inline; }
label { display: block; font-weight: 600; margin-bottom: .3rem; }
input[type=password] { font: inherit; padding: .3rem; width: min(100%, 28rem); box-sizing: border-box; border: 1px solid #4a4a4a; }
code { font-size: .9em; overflow-wrap: anywhere; }
"#;

/// Reloads the page every few seconds, except while a form is being used (a field has the
/// focus or was typed into) or the tab is hidden.
pub const REFRESH_SCRIPT: &str = r#"
(function () {
  var busy = false;
  document.addEventListener('focusin', function (e) { if (e.target.form) busy = true; });
  document.addEventListener('focusout', function () { busy = false; });
  document.addEventListener('input', function () { busy = true; });
  setInterval(function () {
    if (!busy && document.visibilityState === 'visible') location.reload();
  }, SECONDS * 1000);
})();
"#;
