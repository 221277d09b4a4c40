// <form data-confirm="question">: ask before submitting (no inline handlers: the CSP forbids them).
document.addEventListener("submit", (e) => {
  const form = e.target.closest("form[data-confirm]");
  if (form && !window.confirm(form.dataset.confirm)) e.preventDefault();
});
