//! Accessibility checks run in the page through WebDriver: every control has an accessible
//! name, and all text reaches WCAG AA contrast (4.5:1) against what it is painted on.

use fantoccini::Client;
use serde_json::json;

/// Every visible input, select, textarea and button has an accessible name (aria-label, a
/// `<label>`, aria-labelledby, a button's text, or a title); returns how many were checked
/// and the ones without.
const LABELS: &str = r#"
var missing = [], checked = 0;
document.querySelectorAll('input, select, textarea, button').forEach(function (el) {
  if (el.type === 'hidden') return;
  checked++;
  var name = (el.getAttribute('aria-label') || '').trim();
  if (!name && el.labels) name = Array.from(el.labels).map(function (l) { return l.textContent; }).join(' ').trim();
  if (!name && el.getAttribute('aria-labelledby')) {
    name = el.getAttribute('aria-labelledby').split(/\s+/).map(function (id) {
      var e = document.getElementById(id); return e ? e.textContent : '';
    }).join(' ').trim();
  }
  if (!name && el.tagName === 'BUTTON') name = el.textContent.trim();
  if (!name && el.title) name = el.title.trim();
  if (!name) missing.push(el.outerHTML.slice(0, 100));
});
return {checked: checked, missing: missing};
"#;

/// WCAG contrast of every visible element that holds text of its own: its computed colour
/// against the background it is painted on (the nearest backgrounds up the tree, blended, over
/// white); returns how many were checked and those under 4.5:1.
const CONTRAST: &str = r#"
function parse(c) {
  var m = /rgba?\(([^)]+)\)/.exec(c);
  if (!m) return null;
  var p = m[1].split(/[\s,\/]+/).filter(Boolean).map(Number);
  return {r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1};
}
function over(top, bottom) {
  var a = top.a;
  return {r: top.r * a + bottom.r * (1 - a), g: top.g * a + bottom.g * (1 - a), b: top.b * a + bottom.b * (1 - a), a: 1};
}
function luminance(c) {
  function f(v) { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); }
  return 0.2126 * f(c.r) + 0.7152 * f(c.g) + 0.0722 * f(c.b);
}
function background(el) {
  var layers = [];
  for (var e = el; e; e = e.parentElement) {
    var c = parse(getComputedStyle(e).backgroundColor);
    if (c && c.a > 0) { layers.push(c); if (c.a >= 1) break; }
  }
  var bg = {r: 255, g: 255, b: 255, a: 1};
  for (var i = layers.length - 1; i >= 0; i--) bg = over(layers[i], bg);
  return bg;
}
var failures = [], checked = 0, unparsed = [];
document.querySelectorAll('body *').forEach(function (el) {
  var own = Array.from(el.childNodes).some(function (n) { return n.nodeType === 3 && n.textContent.trim(); });
  if (!own) return;
  var st = getComputedStyle(el);
  if (st.visibility === 'hidden' || st.display === 'none' || el.getClientRects().length === 0) return;
  var fg = parse(st.color);
  if (!fg) { unparsed.push(st.color); return; }
  var bg = background(el);
  fg = over(fg, bg);
  var a = luminance(fg), b = luminance(bg);
  var ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
  checked++;
  if (ratio < 4.5) failures.push(el.tagName + ' "' + el.textContent.trim().slice(0, 40) + '": ' + ratio.toFixed(2));
});
return {checked: checked, failures: failures, unparsed: unparsed};
"#;

/// Runs the label and contrast checks on the page shown now; panics with what failed.
pub async fn accessible(client: &Client, what: &str) {
    let labels = client.execute(LABELS, vec![]).await.unwrap();
    assert!(labels["checked"].as_u64().unwrap() > 0, "{what}: no control to check");
    assert_eq!(labels["missing"], json!([]), "{what}: controls without a label");
    let contrast = client.execute(CONTRAST, vec![]).await.unwrap();
    assert!(
        contrast["checked"].as_u64().unwrap() > 5,
        "{what}: no text checked: {contrast}"
    );
    assert_eq!(contrast["unparsed"], json!([]), "{what}: colours the check cannot read");
    assert_eq!(contrast["failures"], json!([]), "{what}: text under 4.5:1 contrast");
}
