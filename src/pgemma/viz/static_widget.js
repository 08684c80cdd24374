// The page side of pgemma.viz.widgets.interactive_figure, inlined after each widget's HTML: when a
// control moves, show the figure pgemma drew for the new state. No network, no kernel, no library.
(function (root) {
  "use strict";
  // {sizes: [values per control], labels: [[label per value] per control],
  //  images: [data url], figures: [image index per state], captions: [text per state]}
  var data = JSON.parse(root.querySelector(".pgemma-states").textContent);
  var controls = Array.prototype.slice.call(root.querySelectorAll("[data-control]"));
  var image = root.querySelector(".pgemma-figure");
  var caption = root.querySelector(".pgemma-caption");

  function show() {
    // States are numbered row-major over the controls, in their order (the last varies fastest).
    var state = 0;
    controls.forEach(function (control, k) {
      var position = Number(control.value);
      state = state * data.sizes[k] + position;
      var readout = control.parentNode.querySelector("output");
      if (readout !== null) {
        readout.textContent = data.labels[k][position];
      }
    });
    image.src = data.images[data.figures[state]];
    image.alt = caption.textContent = data.captions[state];
    root.setAttribute("data-state", String(state));
  }

  controls.forEach(function (control) {
    control.addEventListener("input", show);
    control.addEventListener("change", show);
  });
})(document.currentScript.parentNode);
