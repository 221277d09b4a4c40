// Small DOM helpers shared by the labeling pages (ES module, no side effects on import).

export function csrfToken() {
  const m = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
  return m ? decodeURIComponent(m[1]) : "";
}

// Tiny element builder; text goes in through textContent (tag names are user data).
export function h(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
}

// A mouse click leaves focus on the button; drop it so Enter means "accept" again. The second
// click of a double-click (detail 2+) is dropped: after the first one the page has moved on,
// and the second would act on the next image or selection, unseen.
export function clicked(handler) {
  return (e) => {
    if (e.detail > 1) return;
    if (e.detail > 0) e.currentTarget.blur();
    handler(e);
  };
}
