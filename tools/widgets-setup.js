// Loaded by every page with widgets, between require.js and the widget manager (embed-amd.js);
// tools/offline_assets.py copies it to _static/widgets/setup.js.
(function () {
  "use strict";
  // The widget manager finds its own files (icon fonts) next to the module it names
  // "@jupyter-widgets/html-manager/dist/...": map that name to this folder, so they are served by
  // the book instead of being looked up next to the page.
  var folder = new URL(".", document.currentScript.src).href.replace(/\/$/, "");
  window.require.config({paths: {"@jupyter-widgets/html-manager/dist": folder}});

  // Widgets typeset their descriptions with the MathJax 2 call MathJax.Hub.Queue; the book loads
  // MathJax 3, which has no Hub. Translate the call once MathJax 3 (a deferred script) has run,
  // before the widgets are drawn (on the window's load event).
  window.addEventListener("DOMContentLoaded", function () {
    var mathjax = window.MathJax;
    if (mathjax === undefined || mathjax.Hub !== undefined) {
      return;
    }
    mathjax.Hub = {
      Queue: function (command) {  // command = ["Typeset", MathJax.Hub, element]
        if (mathjax.startup !== undefined) {
          mathjax.startup.promise.then(function () { return mathjax.typesetPromise([command[2]]); });
        }
      }
    };
  });
})();
